"""Kaltura wire protocol: event forms, parameter codecs and KS."""
