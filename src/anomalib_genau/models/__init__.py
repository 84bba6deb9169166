"""GenAU models."""
