raise RuntimeError("import-time failure in user graph")
