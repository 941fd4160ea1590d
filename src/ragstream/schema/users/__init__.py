"""The users area of the API: types, root fields."""
