"""The FlashFit recommendation server. Kept import-light: heavy modules load inside the app."""

__version__ = "0.1.0"
