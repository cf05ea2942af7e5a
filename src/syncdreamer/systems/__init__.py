"""syncdreamer.systems"""
