"""syncdreamer.diffusion"""
