"""Small helpers shared across ctrag modules (atomic writes, hashing, seeding)."""
