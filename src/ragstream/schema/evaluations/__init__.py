"""The evaluations area of the API: types, root fields."""
