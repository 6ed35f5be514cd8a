"""Device meshes and placement. Model code knows no devices; this package maps it onto a mesh."""
