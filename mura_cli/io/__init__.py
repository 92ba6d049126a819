"""File-level input: finding images (discover) and reading them (decode). No models here."""
