"""syncdreamer.metrics"""
