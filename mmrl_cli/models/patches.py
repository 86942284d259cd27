"""How big a ViT patch is for an image that is not the built-in env's (whose tile is a patch)."""


def default_patch_size(height: int, width: int) -> int:
    """1 pixel for small images (MiniGrid/BabyAI's 7x7 symbolic view: a pixel is a cell), else 8."""
    return 1 if height * width <= 256 else 8
