"""fitml features."""
