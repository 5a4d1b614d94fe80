"""The gateway's documents API: uploads (inline or as jobs), listing, reading,
replacing and deleting documents, and the jobs that write large ones."""
