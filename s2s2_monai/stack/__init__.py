"""The semantic stack: prompts, generators, the compact resumable cache, paired sampling."""
