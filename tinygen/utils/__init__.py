"""Small helpers that sit beside the engine: PNG writing and image grids."""
from .image import write_png, encode_png, image_grid, save_image_grid
