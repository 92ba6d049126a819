"""Writing results: CSV and JSON tables, images for the report, the PDF. Never calls the model."""
