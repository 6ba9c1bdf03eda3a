"""How a report reads: the console line and summary, the message and advice, the progress bar."""
