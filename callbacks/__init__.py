"""Lightning integration of gradwatch (installed as ``gradwatch.callbacks``)."""
