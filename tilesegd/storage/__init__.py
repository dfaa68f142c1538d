"""Object storage and URLs: scenes and model files on S3, GCS, Azure Blob and HTTP(S).

``urls`` parses locations and maps them to GDAL's ``/vsi`` paths, ``redact`` keeps secrets out of
messages, ``env`` turns each cloud's standard environment into GDAL and listing settings,
``listing`` expands an input location into objects, ``fetch`` keeps model files in a local cache
keyed by their SHA-256. No torch here.
"""
