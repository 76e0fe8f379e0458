"""fitml evaluation."""
