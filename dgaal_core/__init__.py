"""dgaal."""
