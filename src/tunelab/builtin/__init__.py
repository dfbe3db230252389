"""Built-in assets that need no outside data: the generated text-to-SQL task (``text2sql``)."""
