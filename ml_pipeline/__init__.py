"""fitml ml_pipeline."""
