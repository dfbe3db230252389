"""Evaluation: task metrics (``metrics``), text-to-SQL execution (``sql_exec``)."""
