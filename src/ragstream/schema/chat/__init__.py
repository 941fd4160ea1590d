"""The chat area of the API: types, root fields and loaders."""
