//! The update flow: source -> fetch -> verify -> import -> deploy.
