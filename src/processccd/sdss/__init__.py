"""Readers of the five SDSS imaging formats, one module each (fpc, fpm, tsfield, psfield, astrans); they return
plain arrays and objects, and turn every malformed input into an `InputError` naming the file. `fits` holds
the FITS decoding they share."""
