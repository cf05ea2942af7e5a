"""syncdreamer.models"""
