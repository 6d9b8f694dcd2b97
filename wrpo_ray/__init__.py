"""wrpo-ray: implicit model fusion with WRPO on Ray."""
