"""corral: run a fleet of AI agents on a small business's real accounts, safely.

See ``docs/architecture.md`` for the map of packages and processes.
"""

__version__ = "0.1.0"
