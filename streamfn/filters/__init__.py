"""Event filtering: Lambda's FilterCriteria, compiled once into checks on each record."""
