;; Jepsen tests for weir. The full suite needs Jepsen from Clojars (see
;; README.md); the `debian` profile runs what does not need it (the HTTP
;; client, the pure checker, the smoke run, the reader check) offline
;; against Debian's packaged jars, as CI does.
(defproject jepsen.weir "0.1.0-SNAPSHOT"
  :description "Jepsen tests for weir, a Raft-replicated message queue"
  :license {:name "Apache-2.0"}
  :dependencies [[org.clojure/clojure "1.11.1"]
                 [jepsen "0.3.5"]
                 [clj-http "3.12.3"]
                 [cheshire "5.12.0"]]
  :main jepsen.weir.cli
  :jvm-opts ["-Djava.awt.headless=true"]
  :profiles
  {:debian {:local-repo "/usr/share/maven-repo"
            :offline? true
            :repositories ^:replace []
            :dependencies ^:replace [[org.clojure/clojure "1.11.1"]
                                     [clj-http "2.3.0"]
                                     [cheshire "5.11.0"]]
            ;; Only the namespaces that do not require jepsen.*.
            :test-selectors {:default (constantly true)}
            :main ^:replace weir.smoke}})
