"""The documents area of the API: types, root fields."""
