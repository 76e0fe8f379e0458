"""fitml serving."""
