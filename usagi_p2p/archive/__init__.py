"""Archives: a trade history as CAR v1 files anyone may hold and no one else can read."""
