"""Vector files (AOI, zones) placed on a scene's pixel grid."""
