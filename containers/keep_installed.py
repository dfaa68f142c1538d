"""Print ``name==version`` for each installed distribution named on the command line (those
not installed are left out): a pip constraints file that keeps a base image's builds."""

import sys
from importlib import metadata

for name in sys.argv[1:]:
    try:
        print(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        pass
