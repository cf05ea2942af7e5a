"""syncdreamer.checkpoints"""
