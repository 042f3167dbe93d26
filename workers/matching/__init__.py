"""The matching path: an event in the inbox becomes linked or a case 1, 2 or 3 mismatch."""
