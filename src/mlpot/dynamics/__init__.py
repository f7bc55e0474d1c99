"""Using a potential: the ASE calculator and molecular dynamics."""
