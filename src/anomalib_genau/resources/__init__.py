"""Package data: the defect taxonomy."""
