"""syncdreamer.recon"""
