"""syncdreamer.data"""
