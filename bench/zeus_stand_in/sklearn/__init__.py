"""Stand-in for the one scikit-learn function Zeus imports (its monitor package imports it at import time)."""
