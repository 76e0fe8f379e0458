"""fitml training."""
