"""`tunelab compare`: the base model and each method x seed trained and evaluated side by side."""
