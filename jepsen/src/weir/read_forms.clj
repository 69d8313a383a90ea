(ns weir.read-forms
  "Reads every form of every .clj file under the given directories, without
  evaluating any, so the namespaces that need Jepsen (not installable here)
  are at least checked to be well-formed Clojure: balanced, readable, each
  file a namespace form first.

    lein with-profile debian run -m weir.read-forms src test"
  (:require [clojure.java.io :as io])
  (:import (java.io PushbackReader)))

(def ^:private resolver
  "Resolves ::alias/keywords and syntax-quoted symbols without loading the
  aliased namespaces: the reader check is about form, not about names."
  (reify clojure.lang.LispReader$Resolver
    (currentNS [_] 'user)
    (resolveClass [_ sym] sym)
    (resolveAlias [_ sym] sym)
    (resolveVar [_ sym] sym)))

(defn read-file
  "The forms of one file; throws with the file and line on a bad form."
  [file]
  (with-open [r (PushbackReader. (clojure.lang.LineNumberingPushbackReader. (io/reader file)))]
    (binding [*read-eval* false
              *reader-resolver* resolver]
      (loop [forms []]
        (let [form (try (read {:eof ::eof :read-cond :allow} r)
                        (catch Exception e
                          (throw (ex-info (str file ": " (.getMessage e)) {:file (str file)} e))))]
          (if (= ::eof form)
            forms
            (recur (conj forms form))))))))

(defn -main
  [& dirs]
  (let [files (->> dirs
                   (mapcat #(file-seq (io/file %)))
                   (filter #(.endsWith (.getName ^java.io.File %) ".clj"))
                   (sort-by str))
        bad   (atom 0)]
    (doseq [f files]
      (try
        (let [forms (read-file f)]
          (if (and (seq? (first forms)) (= 'ns (ffirst forms)))
            (println (format "%-45s %3d forms" (str f) (count forms)))
            (do (swap! bad inc)
                (println (str f ": the first form is not (ns ...)")))))
        (catch Exception e
          (swap! bad inc)
          (println (.getMessage e)))))
    (println (format "read-forms: %d files, %d bad" (count files) @bad))
    (System/exit (if (and (pos? (count files)) (zero? @bad)) 0 1))))
