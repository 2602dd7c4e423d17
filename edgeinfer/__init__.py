"""edgeinfer: the lean runtime that triages DICOM studies next to the scanner.

Importing this package never imports torch, tensorrt or openvino.
"""
__version__ = "0.1.0"
