"""Member-to-member transport."""
