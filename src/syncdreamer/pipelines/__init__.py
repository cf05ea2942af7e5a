"""syncdreamer.pipelines"""
