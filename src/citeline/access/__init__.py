"""Who may see what: principals and their groups, API keys, the keyed audit chain."""
