"""orders -> billing -> emails: a small eventbus service; see README.md beside this file."""
