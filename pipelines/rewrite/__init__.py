"""BeautifulPrompt rewriting: training pairs, rewrite-text on one machine, and the batch rewrite job on Ray."""
