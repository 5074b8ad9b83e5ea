"""The extension points' contracts: one small module per Protocol, importing nothing else of citeline.

Each module's docstring is the contract: how the plugin is built (:func:`citeline.plugins.create`),
what it must guarantee, and which ``citeline.testing`` suite checks it. Built-ins and third-party
plugins register under the same entry-point groups and run the same suites.

=====================  ========================================  ==================================  ==========================================
group                  contract (Protocol)                       built as                            contract suite
=====================  ========================================  ==================================  ==========================================
citeline.connectors    :class:`.connector.Connector`             ``cls(config, default_access)``     :mod:`citeline.testing.connectors`
citeline.chunkers      :class:`.chunker.Chunker`                 ``cls(config, tokenize=)``          :mod:`citeline.testing.chunkers`
citeline.embedders     :class:`.embedder.Embedder`               ``cls(config, home=)``              :mod:`citeline.testing.embedders`
citeline.generators    :class:`.generator.GenerationBackend`     ``cls(config, home=, generation=)`` :mod:`citeline.testing.generators`
citeline.rerankers     :class:`.reranker.Reranker`               ``cls(config, embedder=)``          :mod:`citeline.testing.rerankers`
citeline.verifiers     :class:`.verifier.Verifier`               ``cls(config, embedder=)``          :mod:`citeline.testing.verifiers`
=====================  ========================================  ==================================  ==========================================

The modules may import :mod:`citeline.domain`, :mod:`citeline.errors` and each other, nothing else of
citeline (the foundation layer).
"""
